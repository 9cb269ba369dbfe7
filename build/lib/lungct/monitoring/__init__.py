"""Watching a deployed model: the prediction log (written by the API and the app) and drift reports."""
