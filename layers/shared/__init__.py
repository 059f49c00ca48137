import warnings

# authlib 1.9 announces its move to httpx2 when imported, once per process, on stderr; nothing to act
# on until that ships. Set here so it holds whichever module imports authlib first.
warnings.filterwarnings("ignore", message="The httpx module is deprecated")
