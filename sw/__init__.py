"""Host software: integer numerics, the MiniLM model, quantiser and CLI."""
