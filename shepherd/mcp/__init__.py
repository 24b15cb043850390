"""MCP: servers from --mcp-config-path, a connection pool, and the gateway-executed tool loop."""
