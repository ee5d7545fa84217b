"""The authmount server: aiohttp application, mounts, tokens, policies and storage."""
