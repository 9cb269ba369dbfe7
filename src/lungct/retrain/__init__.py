"""Retraining from clinicians' feedback: a challenger trained with the champion's config, promoted only if it is
proven not worse (lungct.retrain.gate) on the same test images (lungct.retrain.challenger)."""
