"""The catalog: product categories, products and their variants, membership types."""
