"""HTTP service for the vocoder: `create_app` builds the FastAPI app, `vocoder serve` runs it.

Imported only by `vocoder serve` and by users of the service; `vocoder/` never imports it.
"""
