"""The tool proxy: MCP servers at ``/mcp/<server>``, HTTP tool APIs at ``/tools/<name>/``."""
