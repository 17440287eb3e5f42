"""tuneforge: take a pretrained language model from raw data to a deployed, compressed chatbot."""

__version__ = "0.1.0"
