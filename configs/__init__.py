"""ml-collections config files, loaded by path (`--config configs/o2a.py:1.3b`)."""
