"""vlmkit's inference service: an OpenAI-compatible chat server for Llama 3.2 Vision."""

__version__ = "0.1.0"
