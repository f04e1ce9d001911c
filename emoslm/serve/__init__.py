"""HTTP servers with OpenAI-compatible interfaces."""
