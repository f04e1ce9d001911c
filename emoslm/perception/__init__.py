"""Hearing the user: speech recognition now; emotion recognition builds on the same parts."""
