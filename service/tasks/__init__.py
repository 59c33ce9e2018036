"""One operation per module; each is a step that jobs.py composes."""
