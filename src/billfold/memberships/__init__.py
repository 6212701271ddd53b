"""Memberships."""
