/* STAND-IN libmat / libMatlabDataArray written for kilosort-docker's tests; not MathWorks
 * code. The mex link line names these libraries; the test sources need nothing from them. */
int ksd_standin_empty_library(void) { return 0; }
