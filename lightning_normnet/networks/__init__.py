"""Plain nn.Modules the baseline models are built from (no Lightning here)."""
