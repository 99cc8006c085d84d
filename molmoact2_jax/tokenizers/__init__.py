"""Tokenizers: the text tokenizer with MolmoAct2's token layout, and the OpenFAST action tokenizer."""


def __getattr__(name):  # lazy, so importing one tokenizer does not pull in the other's dependencies
    if name == "OpenFAST":
        from molmoact2_jax.tokenizers.openfast import OpenFAST
        return OpenFAST
    if name == "TextTokenizer":
        from molmoact2_jax.tokenizers import text
        return getattr(text, name)
    raise AttributeError(name)
