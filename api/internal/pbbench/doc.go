// Package pbbench is schema.proto compiled by protoc-gen-go. It exists only
// as the baseline of the codec benchmarks in package api (and a check that
// generated code reads the hand-written bytes): nothing outside api's tests
// imports it, and the store never uses it.
//
// Regenerate after changing api/schema.proto (needs protoc and
// protoc-gen-go v1.36.12 on PATH):
//
//	go generate ./api/internal/pbbench
package pbbench

//go:generate protoc -I ../.. --go_out=. --go_opt=paths=source_relative --go_opt=Mschema.proto=github.com/clustermesh/clustermesh/api/internal/pbbench;pbbench schema.proto
