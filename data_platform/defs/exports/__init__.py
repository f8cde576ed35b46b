"""Weekly ML exports: the `ml_exports` asset (one partition per ISO week) and its schedule."""
