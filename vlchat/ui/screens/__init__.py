"""The app's screens: the chat (the conversation), and the dialogs it opens."""
