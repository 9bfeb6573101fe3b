"""Tools for people running the product: the call simulator. Nothing in the product imports them."""
