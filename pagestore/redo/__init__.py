"""WAL redo: base page image + records -> page"""
