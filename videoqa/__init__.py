"""videoqa"""
