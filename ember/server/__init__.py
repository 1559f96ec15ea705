"""`ember serve`: an HTTP server over the AsyncEngine (OpenAI-compatible API first).

Layout (each dialect has one module in each of protocol/, render/ and routes/):
- settings.py  ServerSettings and Limits (plain dataclasses, no web framework)
- state.py     ServerState: the served models, their engines, metrics, the shutdown switch
- app.py       create_app(state): the FastAPI app, middleware, error handlers, routers
- protocol/    pydantic request models per API dialect, and their conversion to SamplingParams
- render/      response and stream-chunk builders per dialect
- routes/      thin handlers: validate -> SamplingParams -> engine -> render
- generation.py  runs a request's prompts on the engine as one stream (streaming and not)
- prompts.py, sse.py, errors.py, middleware.py, metrics.py, structured.py: shared helpers

Nothing here imports FastAPI at package import: only `ember serve` pays for the web stack.
"""
