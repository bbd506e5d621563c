"""Datasets that ship with pcm-hil as package data, so no run ever downloads anything."""
