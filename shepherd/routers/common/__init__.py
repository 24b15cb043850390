"""The one request lifecycle every routing path calls: attempts, retries, selection, relay, SSE frames.

A path (HTTP proxy, PD, gRPC pipeline, external providers) supplies only what is its own: how to
pick a candidate (one worker, or a prefill/decode pair) and how to try it (forward bytes, run a
gRPC stream, translate for a provider). Everything else happens here, once.
"""
