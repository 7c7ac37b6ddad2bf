"""Shared test harnesses and factories: imported by test modules, never a test module itself."""
