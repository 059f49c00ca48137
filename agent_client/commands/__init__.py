"""The client's command groups; `agent_client.cli` mounts them on the `agentserver` app."""
