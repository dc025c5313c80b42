"""Aliases: stable served names for adapters, with promotion, rollback and their record."""
