"""Raiox's SQL: numbered migrations and named queries, installed as package data of raiox_core.sql."""
