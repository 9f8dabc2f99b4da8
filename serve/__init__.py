"""rwkv_edge.serve: the OpenAI-compatible HTTP server over the runtime's engine (FastAPI + uvicorn), and its Ray
Serve deployment."""
