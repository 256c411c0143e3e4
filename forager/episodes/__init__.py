"""The ForagerAgent: the episode loop (loop.py), its prompts (prompts.py) and policies (policies/)."""
