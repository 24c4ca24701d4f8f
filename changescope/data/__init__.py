"""Readers, the sample dict, text processing and the SynthChange generator."""
