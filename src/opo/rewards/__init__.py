"""Answer extraction and reward guards."""
