"""Neuron dynamics, kept apart from the network implementations that use them."""
