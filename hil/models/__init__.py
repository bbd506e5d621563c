"""Reference networks in plain torch fp32 (the `torch` extra).

Each module defines the network, its seeded initial weights, its data order and its training
loop once, so a run with the weights held on a chip can start from the same weights, see the
same batches and use the same hyperparameters as its fp32 reference: only the optimizer (and
where the weights live) differ. `scripts/reference_char_lstm` and `scripts/reference_mnist_gan`
run the references.
"""
