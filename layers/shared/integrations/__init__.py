import warnings

from authlib.deprecate import AuthlibDeprecationWarning

# authlib 1.9 announces its move to httpx2 whenever its httpx client is imported, and its own
# module installs an "always" filter for that category first; nothing to act on until that ships.
warnings.filterwarnings("ignore", message="The httpx module is deprecated", category=AuthlibDeprecationWarning)
