"""Shared set-up of the infrastructure tests: quiet jsii, and synthesize without paying for pip."""

from __future__ import annotations

import os
import shutil
import subprocess


def _node_major_version() -> str:
    node = shutil.which("node")
    if node is None:
        return ""
    version = subprocess.run([node, "--version"], capture_output=True, text=True, check=False).stdout
    return version.strip().lstrip("v").split(".")[0]


# Set before aws_cdk is first imported: the jsii runtime reads them when it starts node.
os.environ.setdefault("JSII_SILENCE_WARNING_DEPRECATED_NODE_VERSION", "1")
os.environ.setdefault("JSII_SILENCE_WARNING_END_OF_LIFE_NODE_VERSION", _node_major_version())
os.environ.setdefault("CDK_DISABLE_VERSION_CHECK", "1")
