"""Inline assets of the planner show page (package data: page.css, page.js)."""
