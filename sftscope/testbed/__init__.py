"""The controlled-knowledge testbed: a synthetic world and a model whose knowledge is known."""
