"""Speaking: TTS backends, emotional prosody and the DSP they need."""
