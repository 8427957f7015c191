"""tmac_convert.format"""
