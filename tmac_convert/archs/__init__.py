"""tmac_convert.archs"""
