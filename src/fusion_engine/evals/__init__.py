"""The eval harness: does a panel beat its best member and its judge alone, and at what cost?"""
