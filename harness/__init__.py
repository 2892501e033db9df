"""Test and benchmark support, outside the product: starting and stopping local servers."""
