"""``/reports``: evaluation reports written under ``$TUNESERVE_HOME/reports``."""
