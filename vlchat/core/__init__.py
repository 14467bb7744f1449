"""The domain: conversations, pictures, sessions, export. No torch, no textual."""
