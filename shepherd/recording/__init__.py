"""Traffic recording (`--record-traffic DIR`) and the trace format `shepherd replay` reads."""
