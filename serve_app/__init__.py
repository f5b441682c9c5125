"""GPT-2 text generation on Ray Serve."""
