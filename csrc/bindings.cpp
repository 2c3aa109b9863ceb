// The Python module ood_zoo.ops._C. It is empty: importing it loads this shared library, whose
// static initialisers register the ood_zoo ops (TORCH_LIBRARY_FRAGMENT / TORCH_LIBRARY_IMPL) with
// the dispatcher. Only Python.h is included, so this TU compiles in a fraction of a second.
#include <Python.h>

PyMODINIT_FUNC PyInit__C(void) {
  static PyModuleDef module = {PyModuleDef_HEAD_INIT, "_C",
                               "Registers the ood_zoo CPU ops (torch.ops.ood_zoo.*).", -1,
                               nullptr};
  return PyModule_Create(&module);
}
