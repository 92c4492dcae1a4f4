"""Proxy stage: ``apidistill proxy``, an OpenAI- and Anthropic-compatible reverse proxy in
front of the teacher that captures live traffic for distillation (docs/proxy.md).

    config.load_proxy_config(path) -> ProxyConfig     the settings file
    server.serve_proxy(cfg)                           check terms, open the store, serve
    capture_store.iter_captures(path)                 captured exchanges, for importers
    capture_store.CapturedExchange                    one of them

Modules: ``app`` (the handlers), ``upstream`` (the shared pool), ``streams`` (SSE split and
assembly), ``redact``, ``enrich`` (logprobs), ``shadow``, ``split``, ``stats``, ``shapes``
(provider error envelopes), ``live_page``. Kept light: ``apidistill --help`` imports nothing
from here.
"""
