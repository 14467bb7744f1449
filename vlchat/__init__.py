"""vlchat: conversations about pictures with local vision-language models, in the terminal."""

__version__ = "0.1.0"
