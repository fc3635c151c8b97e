#include <stdio.h>
int main(void) { puts("teacher-server"); return 0; }
